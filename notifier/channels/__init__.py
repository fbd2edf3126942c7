"""Delivery channels: each sends one `Outbound` and says how it went.

A channel is a small port (`base.Channel`); the adapters are `webhook` (signed HTTP POST),
`email` (SMTP) and `fhir` (a Da Vinci notification bundle to ``$process-message``).
"""
