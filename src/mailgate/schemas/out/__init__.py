"""What the API answers: one ``*Out`` model per response body, used as ``response_model``.

The models describe the JSON the services' views produce, field for field, so the OpenAPI
document tells clients what they get. Stored secrets (passwords, client secrets, private keys)
have no field here: a view that carried one by mistake would lose it on the way out.
"""
