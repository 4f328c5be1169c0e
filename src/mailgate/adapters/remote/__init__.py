"""The remote agent transport: the WebSocket hub of connected agents, what crosses it, and
delivery and "Send test e-mail" through an agent inside the customer's network."""
