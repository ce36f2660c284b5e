"""WebSocket routes of the demo project (the HTTP ones are in urls.py)."""
from hubproject.demo.routing import websocket_urlpatterns as demo_patterns

websocket_urlpatterns = [*demo_patterns]
