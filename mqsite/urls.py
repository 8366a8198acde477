"""Root URLs: the admin (task history, received messages), logging in and
out for the trigger pages, and the tasks app."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # POST /i18n/setlang/: the language switcher of every page.
    path("i18n/", include("django.conf.urls.i18n")),
    # At Django's default LOGIN_URL. Unlike the admin's login, this one lets
    # in users who are not staff; both go back to ?next= when it is given.
    path("accounts/login/", auth_views.LoginView.as_view(next_page="tasks:index"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="tasks:index"), name="logout"),
    path("", include("tasks.urls")),
]
