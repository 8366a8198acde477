from django.tasks import task


@task
def cook_dish(number=None):
    return {"number": number}
