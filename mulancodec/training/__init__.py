"""Training the shipped models: the loop (`loop`), image sets and crops (`data`), the
-ELBO evaluation used for model selection (`evaluate`) and learning curves (`curves`)."""
