"""App configuration of the test app."""
from django.apps import AppConfig


class HubTestConfig(AppConfig):
    name = "tests.hubtest"
    label = "hubtest"
