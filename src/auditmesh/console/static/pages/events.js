import { h } from "../dom.js";

export async function renderEvents(main) {
  main.append(h("h1", {}, "events"));
}
