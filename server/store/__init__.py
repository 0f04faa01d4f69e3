"""The only code that speaks Redis. Every atomic step is one Lua script in `lua/`."""
