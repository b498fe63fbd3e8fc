from django.contrib import admin
from django.utils.html import format_html

from .models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "price", "thumbnail", "image")
    readonly_fields = ("thumbnail",)

    @admin.display(description="picture")
    def thumbnail(self, obj: Product) -> str:
        if not obj.image:
            return "-"
        return format_html('<img src="{}" alt="" style="max-height:60px">', obj.image.url)
