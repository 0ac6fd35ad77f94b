"""Analytics: usage per subscription, flushed in batches by the gateway."""
