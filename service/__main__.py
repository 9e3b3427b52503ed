from service.cli import console

console()
