import { h } from "../dom.js";

export async function renderFindings(main) {
  main.append(h("h1", {}, "findings"));
}
