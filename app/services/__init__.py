"""Domain services shared by the API and the workers. No Flask in here."""
