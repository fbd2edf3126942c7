"""Benchmarks (`wpc bench ingest|enroll|notify|import`, README.md here) and the synthetic ADT
feed they and the tests send. No service imports this package."""
