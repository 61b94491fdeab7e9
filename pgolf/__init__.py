"""pgolf: parameter golf, the #2014/#2139 record stack as a small tested package."""

__version__ = "0.1.0"
