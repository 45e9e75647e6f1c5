"""Scenarios: locust load shapes made of measured steps."""
