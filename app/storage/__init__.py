"""Every SQL statement, by concern: tables, engines and transactions, claims, cascades."""
