"""App configuration of the demo."""
from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "hubproject.demo"
    label = "demo"
