from django.contrib import admin
from django.urls import path

from catalog import views

urlpatterns = [
    path("", views.product_list, name="product-list"),
    path("admin/", admin.site.urls),
]
