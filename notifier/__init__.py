"""The notifier: tells care teams and primary care providers, reliably and lawfully."""
