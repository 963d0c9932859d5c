"""The tickstream producer: exchange WebSocket trades → packed SQS messages, gap-free (venues: exchanges/)."""
