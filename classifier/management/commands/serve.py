"""``manage.py serve``: runserver that loads the model in the background as the server starts.

``make run`` uses it, so the first upload does not wait for TensorFlow and the model (the portal shows
"Model loading" until it is ready). Django's own runserver is unchanged and loads it on first use.
"""

from django.core.management import get_commands, load_command_class

from classifier import inference

# The runserver in force (whitenoise's, then staticfiles', then Django's): static files as before.
_Runserver = type(load_command_class(get_commands()["runserver"], "runserver"))


class Command(_Runserver):
    help = "Run the development server and load the model in a background thread at start."

    def inner_run(self, *args, **options):
        # inner_run runs in the serving process (the autoreloader's child), once per (re)start.
        inference.warm_up_in_background()
        return super().inner_run(*args, **options)
