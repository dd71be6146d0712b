"""genwire preprocess service: Validates, templates and tokenizes requests from genwire.requests."""
