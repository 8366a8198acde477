import json

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from huey_site.tasks import cook_dish


@csrf_exempt
@require_POST
def enqueue(request):
    body = json.loads(request.body)
    result = cook_dish.enqueue(*body.get("args", []))
    return JsonResponse({"id": result.id}, status=202)


urlpatterns = [path("api/tasks", enqueue)]
