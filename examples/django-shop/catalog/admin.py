from django.contrib import admin
from django.utils.html import format_html
from fdfs_http.django.templatetags.fdfs import thumbnail

from .models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "price", "picture", "image")
    readonly_fields = ("picture",)

    @admin.display(description="picture")
    def picture(self, obj: Product) -> str:
        """The 150x150 thumbnail the cluster renders, not the uploaded picture (which may be megabytes)."""
        if not obj.image:
            return "-"
        return format_html('<img src="{}" alt="" style="max-height:60px">', thumbnail(obj.image, "150x150"))
