"""The tickstream producer: Binance WebSocket trades → packed SQS messages, gap-free."""
