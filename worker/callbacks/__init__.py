"""Signed HTTP callbacks: outcome events POSTed to the upstream app that submitted the Item."""
