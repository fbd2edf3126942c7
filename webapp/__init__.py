"""The care team's web app: server-rendered pages over the services' HTTP APIs (issue 13)."""
