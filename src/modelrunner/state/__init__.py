"""State in DynamoDB: the job (image) row, region rows, raw features and per-region results."""
