"""The on-call web console (`paw console`): pages in app.py, sign-in, roles and CSRF in auth.py."""
