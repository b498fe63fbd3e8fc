from django.db import models


class Product(models.Model):
    """A product with a picture: the picture is stored in fdfs, `image` holds its file ID."""

    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    # Width and height are measured once at upload and stored, so pages never read the image back.
    image = models.ImageField(upload_to="products/", width_field="image_width", height_field="image_height")
    image_width = models.PositiveIntegerField(null=True, editable=False)
    image_height = models.PositiveIntegerField(null=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return self.name
