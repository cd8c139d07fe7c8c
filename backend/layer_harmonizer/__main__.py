from layer_harmonizer.cli import program

program()
