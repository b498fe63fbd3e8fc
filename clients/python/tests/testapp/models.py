from django.db import models


class Document(models.Model):
    """A model as a shop would write it: files in the default storage (FdfsStorage), IDs in the columns."""

    title = models.CharField(max_length=100)
    attachment = models.FileField(upload_to="docs/")
    image = models.ImageField(upload_to="images/", blank=True)

    def __str__(self) -> str:
        return self.title


class Photo(models.Model):
    """A second model with a file field (fdfs_migrate_media moves the files of every model)."""

    caption = models.CharField(max_length=100)
    picture = models.ImageField(upload_to="photos/")

    def __str__(self) -> str:
        return self.caption
