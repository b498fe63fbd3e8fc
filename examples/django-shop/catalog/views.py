from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Product


def product_list(request: HttpRequest) -> HttpResponse:
    """Every product with its picture: the <img> URLs come from FdfsStorage.url(), no request to fdfs."""
    return render(request, "catalog/product_list.html", {"products": Product.objects.all()})
