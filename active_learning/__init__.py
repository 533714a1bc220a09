"""Active learning: which clips to label next. The query strategies (`active_learning.acquisition`),
what the model sees in a clip (`active_learning.embedding`: embeddings and Monte Carlo dropout
passes), and the offline simulation of labeling rounds (`active_learning.simulate`). No HTTP.
"""
