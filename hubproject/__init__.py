"""The demo Django project that hosts processhub."""
