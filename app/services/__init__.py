"""What a user asks for (submit, batch, cancel, retry, reads), each one transaction."""
