"""TicketBlitz: a Trio ticket-booking server that survives a flash sale."""

__version__ = "0.1.0"
