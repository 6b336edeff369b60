"""Transports: parse, authenticate, call the service layer, map errors. Nothing else.

dispatch.py is the one pipeline every transport goes through (auth, logging, metrics,
recovery); grpc_server.py and the HTTP gateway only adapt their wire format to it.
"""
