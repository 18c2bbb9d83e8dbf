"""The dashboard's page and login form (served by athanor.serve)."""
