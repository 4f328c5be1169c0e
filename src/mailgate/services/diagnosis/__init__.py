"""Test and diagnose an e-mail server configuration (README "Test an e-mail server").

- ``run``      the test itself, over an injected ``ports.Prober`` (the transport)
- ``hints``    advice for the admin by failure kind and server reply
- ``message``  the sender and the test e-mail from the message defaults
- ``target``   which configuration to test: the stored one or an unsaved one
"""
