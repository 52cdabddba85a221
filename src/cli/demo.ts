// Placeholder until the lab module lands.
export async function runDemo(): Promise<number> {
  return 1;
}
