"""RabbitMQ: the topology and the confirming publisher, the consumer that acks, retries or
dead-letters, and the dead-letter queue's tools."""
