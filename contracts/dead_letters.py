"""Dead-letter records (§8): what could not be accepted, why, and where it came from.

The original key, headers and value travel unchanged as the Kafka record's key, headers
and value; these headers are added so operators can list, inspect and redrive.
"""

from __future__ import annotations

REASON = "drip-dlq-reason"
ORIGIN_TOPIC = "drip-dlq-topic"
ORIGIN_PARTITION = "drip-dlq-partition"
ORIGIN_OFFSET = "drip-dlq-offset"
CONSUMER = "drip-dlq-consumer"
