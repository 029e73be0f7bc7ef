"""Shared test helpers: generated image folders, model fixtures, a throw-away PostgreSQL."""
