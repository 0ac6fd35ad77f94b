"""The gateway: WebSocket consumers fed by RabbitMQ, handshake auth, metering."""
