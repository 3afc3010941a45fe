"""Create the Interface group: an LIS account that orders and reads every result but never signs."""

from django.db import migrations


def create_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name="Interface")


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="Interface").delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_create_role_groups")]
    operations = [migrations.RunPython(create_group, remove_group)]
