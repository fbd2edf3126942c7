"""Tools run as `wpc` sub-commands beside the services: each works on the services'
database or protocols from outside, and no service imports them."""
