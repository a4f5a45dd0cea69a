from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []  # noqa: RUF012 - as Django writes migrations

    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Welcome",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("email", models.CharField(max_length=200)),
                ("via", models.CharField(max_length=20)),
                ("mule", models.IntegerField()),
            ],
        ),
    ]
