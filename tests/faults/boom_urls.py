"""The site's URLs plus one view that fails, to see what a 500 shows."""

from django.urls import include, path


def boom(request):
    raise RuntimeError("secret detail of an internal failure")


urlpatterns = [path("boom", boom), path("", include("mqsite.urls"))]
