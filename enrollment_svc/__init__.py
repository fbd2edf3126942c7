"""Enrollment service: utilization history across hospitals, TOC / ISR / SUD-ENS
eligibility, enrollment candidates on Kafka, and the care team's API."""
