"""An API token ends with the password it was issued under.

A password change, a reset or an administrator setting a new password signs every browser
session out (Django's session hash); the token an LIS or a script holds must stop working too,
or a leaked token would outlive the very step a lab takes to shut an intruder out.
"""

from django.db.models.signals import pre_save
from django.dispatch import receiver

from accounts.models import User


@receiver(pre_save, sender=User)
def _token_ends_with_the_password(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    old = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    if old is not None and old != instance.password:
        from rest_framework.authtoken.models import Token

        Token.objects.filter(user_id=instance.pk).delete()
