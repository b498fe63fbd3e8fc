from django import forms

from .models import Document


class DocumentForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Document
        fields = ("title", "attachment", "image")
